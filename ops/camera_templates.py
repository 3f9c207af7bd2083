"""Header templates for the camera simulator, in the shapes of real Rubin camera headers.

The primary-header cards below are copied from real exposures in the public test data of the
lsst/obs_lsst repository (ComCam, LATISS, LSSTCam). The simulator (:func:`ops.camera.build_primary_header`)
starts from them and replaces the cards that differ per exposure and per detector, so simulated files
look like the camera's own: TIMESYS TAI, DAYOBS a string, SEQNUM an int, GROUPID/CURINDEX/MAXINDEX,
RAFTBAY/CCDSLOT, ``HIERARCH SIMULATE ...`` cards, and some null cards.

The broken-header builders reproduce real faults for tests: :func:`broken_latiss_header` is shaped like
LATISS ``AT_O_20190306_000014`` (IMGTYPE and FILTER null, no OBSID/DAYOBS/SEQNUM/TIMESYS/detector) and
:func:`imsim_header` like an imsim simulated flat (no INSTRUME, an integer visit id in OBSID).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from astropy.io import fits

__all__ = [
    "AMPLIFIERS",
    "COMCAM_PRIMARY",
    "FILTERS",
    "LATISS_PRIMARY",
    "LSSTCAM_PRIMARY",
    "PRIMARY_TEMPLATES",
    "SHUTTER_OVERHEAD_S",
    "amplifier_cards",
    "broken_latiss_header",
    "header_from_cards",
    "imsim_header",
    "template_header",
]

COMCAM_PRIMARY: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SIMPLE": True,
        "EXTEND": True,
        "BINX": 1,
        "BINY": 1,
        "CCDGAIN": 1.0,
        "CCDNOISE": 10.0,
        "DATE": "2024-11-09T06:35:11.753",
        "MJD": 60623.274441585876,
        "IMGTYPE": "OBJECT",
        "DATE-OBS": "2024-11-09T06:34:41.323",
        "MJD-OBS": 60623.27408938669,
        "DATE-TRG": "2024-11-09T06:35:11.749",
        "MJD-TRG": 60623.27444153931,
        "OBSID": "CC_O_20241108_000266",
        "DATE-BEG": "2024-11-09T06:34:41.323",
        "MJD-BEG": 60623.27408938669,
        "DATE-END": "2024-11-09T06:35:11.754",
        "MJD-END": 60623.27444159705,
        "BUNIT": "adu",
        "TIMESYS": "TAI",
        "GROUPID": "2024-11-09T06:33:55.311",
        "INSTRUME": "ComCam",
        "TELESCOP": "Simonyi Survey Telescope",
        "OBS-LONG": -70.749417,
        "OBS-LAT": -30.244639,
        "OBS-ELEV": 2663.0,
        "OBSGEO-X": 1818938.94,
        "OBSGEO-Y": -5208470.95,
        "OBSGEO-Z": -3195172.08,
        "RA": 53.12550000000002,
        "DEC": -28.1,
        "RASTART": 53.312407782266014,
        "DECSTART": -27.994761670941685,
        "RAEND": 53.31246704933056,
        "DECEND": -27.994760889653513,
        "ROTPA": 102.79926387330579,
        "ROTCOORD": "sky",
        "HASTART": 1.541345763780302,
        "ELSTART": 69.7265612661672,
        "AZSTART": -89.1371499002191,
        "AMSTART": 1.0659132785610415,
        "HAEND": 1.550590917208806,
        "ELEND": 69.607158447261,
        "AZEND": -89.2114714250464,
        "AMEND": 1.0667373535410307,
        "TRACKSYS": "RADEC",
        "RADESYS": "ICRS",
        "FOCUSZ": 2.0585230644024572,
        "OBJECT": "slew_icrs",
        "VIGNETTE": "NO",
        "VIGN_MIN": "NO",
        "TESTTYPE": "OBJECT",
        "CAMCODE": "CC",
        "CONTRLLR": "O",
        "DAYOBS": "20241108",
        "SEQNUM": 266,
        "PROGRAM": "PP-SURVEY",
        "REASON": "science",
        "CURINDEX": 1,
        "MAXINDEX": 1,
        "TSTAND": "TMACCv1_SUM",
        "IMAGETAG": "55a26f70adb62647",
        "OBSANNOT": "",
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "CCDSLOT": "S00",
        "RAFTBAY": "R22",
        "FIRMWARE": "31395007",
        "PLATFORM": "comcam",
        "CONTNUM": "18edfc9b",
        "DAQVERS": "R5-V11.3 2024-09-16T15:03:01Z (10c5a519)",
        "DAQPART": "comcam",
        "DAQFOLD": "raw",
        "SEQFILE": "FP_ITL_2s_ir2_v26.seq",
        "SEQNAME": "FP_ITL_2s_ir2_v26.seq",
        "SEQCKSUM": "980618532",
        "LSST_NUM": "ITL-3800C-229",
        "CCD_SERN": "23166",
        "REBNAME": "LCA-13574-061",
        "RAFTNAME": "LCA-11021_RTM-031",
        "FPVERS": "1.2.8",
        "IHVERS": "1.1.6",
        "FILTBAND": "g",
        "FILTER": "g_01",
        "FILTPOS": 4423.07,
        "FILTSLOT": 3,
        "EXPTIME": 30.0,
        "DARKTIME": 30.4306,
        "SHUTTIME": 30.0,
        "AIRTEMP": 13.725000381469727,
        "PRESSURE": 74120.0,
        "HUMIDITY": 22.299999237060547,
        "WINDSPD": 0.7505999803543091,
        "WINDDIR": 209.3000030517578,
        "SEEING": None,
        "HEADVER": 2,
        "FILENAME": "CC_O_20241108_000266_R22_S00.fits",
        "SIMULATE MTMOUNT": 0,
        "SIMULATE MTM1M3": 0,
        "SIMULATE MTM2": 0,
        "SIMULATE CAMHEXAPOD": 0,
        "SIMULATE M2HEXAPOD": 0,
        "SIMULATE MTROTATOR": 0,
        "SIMULATE MTDOME": 0,
        "SIMULATE MTDOMETRAJECTORY": 0,
        "SIMULATED MJD-OBS": None,
        "SIMULATED DATE-OBS": None,
        "SIMULATED DATE-END": None,
        "STUTTER ROWS": 0,
        "STUTTER DELAY": 0.0,
        "STUTTER NSHIFTS": 0,
    }
)
"""Primary header of ComCam ``CC_O_20241108_000266`` detector R22_S00 (an OBJECT frame)."""


LATISS_PRIMARY: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SIMPLE": True,
        "EXTEND": True,
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "BINX": 1,
        "BINY": 1,
        "CCDGAIN": 1.0,
        "CCDNOISE": 10.0,
        "CCDSLOT": "S00",
        "RAFTBAY": "R00",
        "FIRMWARE": "11394008",
        "PLATFORM": "auxtel",
        "CONTNUM": "189216ee",
        "DAQVERS": "R5-V8.1 2023-12-05T02:49:12Z (5acbb461)",
        "DAQPART": "lat",
        "DAQFOLD": "raw",
        "SEQFILE": "FP_ITL_2s_ir2_v26_no_RG.seq",
        "SEQNAME": "FP_ITL_2s_ir2_v26_no_RG.seq",
        "SEQCKSUM": "1477162166",
        "LSST_NUM": "ITL-3800C-068",
        "CCD_SERN": "20862",
        "REBNAME": "Unknown",
        "RAFTNAME": "AuxTel-Raft",
        "FPVERS": "1.2.7",
        "IHVERS": "1.1.5",
        "STUTTER ROWS": 0,
        "STUTTER DELAY": 0.0,
        "STUTTER NSHIFTS": 0,
        "FILTPOS": None,
        "CCDTEMP": -101.024,
        "DATE": "2024-06-25T01:28:25.400",
        "MJD": 60486.06140509248,
        "IMGTYPE": "CWFS",
        "DATE-OBS": "2024-06-25T01:27:55.160",
        "MJD-OBS": 60486.06105509261,
        "DATE-TRG": "2024-06-25T01:28:25.395",
        "MJD-TRG": 60486.061405034736,
        "OBSID": "AT_O_20240624_000106",
        "DATE-BEG": "2024-06-25T01:27:55.160",
        "MJD-BEG": 60486.06105509261,
        "DATE-END": "2024-06-25T01:28:25.400",
        "MJD-END": 60486.06140509248,
        "GROUPID": "2024-06-25T01:26:31.895#1",
        "BUNIT": "adu",
        "TIMESYS": "TAI",
        "INSTRUME": "LATISS",
        "TELESCOP": "LSST AuxTelescope",
        "OBS-LONG": -70.7476862,
        "OBS-LAT": -30.2447889,
        "OBS-ELEV": 2663.0,
        "OBSGEO-X": 1819093.52,
        "OBSGEO-Y": -5208408.1,
        "OBSGEO-Z": 3195186.45,
        "FACILITY": "Vera C. Rubin Observatory",
        "RA": 223.77366208333333,
        "DEC": -20.01348777777778,
        "RASTART": 223.77379669301,
        "DECSTART": -20.013429451065846,
        "RAEND": 223.77382195537703,
        "DECEND": -20.013749612906178,
        "ROTPA": 98.63385126206754,
        "ROTCOORD": "sky",
        "HASTART": 0.042468393994478826,
        "ELSTART": 79.85583534052326,
        "AZSTART": -3.3659773360866496,
        "AMSTART": 1.0156209056522223,
        "AHAEND": None,
        "AELEND": None,
        "AAZEND": None,
        "AAMEND": None,
        "TRACKSYS": None,
        "RADESYS": "ICRS",
        "FOCUSZ": 0.742219865322113,
        "OBJECT": "HD 131586",
        "INSTPORT": 2,
        "ATM3PORT": None,
        "DOMEAZ": 358.96,
        "SHUTLOWR": 0.0,
        "SHUTUPPR": 100.0,
        "VIGNETTE": "NO",
        "VIGN_MIN": "NO",
        "WCSAXES": None,
        "CTYPE1": None,
        "CTYPE2": None,
        "CUNIT1": None,
        "CUNIT2": None,
        "CRVAL1": None,
        "CRVAL2": None,
        "CRPIX1": None,
        "CRPIX2": None,
        "CD1_1": None,
        "CD1_2": None,
        "CD2_1": None,
        "CD2_2": None,
        "EQUINOX": None,
        "TESTTYPE": "CWFS",
        "CAMCODE": "AT",
        "CONTRLLR": "O",
        "DAYOBS": "20240624",
        "SEQNUM": 106,
        "PROGRAM": "cwfs",
        "REASON": "INTRA",
        "CURINDEX": 1,
        "MAXINDEX": 1,
        "TSTAND": None,
        "IMAGETAG": "419350febde047ef",
        "OBSANNOT": "",
        "TEMP_SET": -104.15,
        "GRATING": "empty_1",
        "GRATBAND": "EMPTY",
        "GRATSLOT": 0,
        "LINSPOS": 67.0,
        "FILTBAND": "r",
        "FILTER": "SDSSr_65mm",
        "FILTSLOT": 2,
        "EXPTIME": 30.0,
        "DARKTIME": 30.2407,
        "SHUTTIME": 30.0,
        "AIRTEMP": 1.5750000476837158,
        "PRESSURE": 73880.0,
        "HUMIDITY": 40.650001525878906,
        "WINDSPD": 12.593400001525879,
        "WINDDIR": 21.05498504638672,
        "SEEING": None,
        "FILENAME": "AT_O_20240624_000106_R00_S00.fits",
        "HEADVER": 2,
        "SIMULATE ATMCS": None,
        "SIMULATE ATHEXAPOD": 0,
        "SIMULATE ATPNEUMATICS": None,
        "SIMULATE ATDOME": 0,
        "SIMULATE ATSPECTROGRAPH": 0,
    }
)
"""Primary header of LATISS ``AT_O_20240624_000106`` detector R00_S00 (a CWFS frame)."""


LSSTCAM_PRIMARY: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SIMPLE": True,
        "EXTEND": True,
        "BINX": 1,
        "BINY": 1,
        "CCDGAIN": 1.0,
        "CCDNOISE": 10.0,
        "DATE": "2025-04-16T00:53:29.524",
        "MJD": 60781.037147270516,
        "IMGTYPE": "ACQ",
        "DATE-OBS": "2025-04-16T00:53:13.573",
        "MJD-OBS": 60781.03696264839,
        "DATE-TRG": "2025-04-16T00:53:29.519",
        "MJD-TRG": 60781.037147206254,
        "OBSID": "MC_O_20250415_000060",
        "DATE-BEG": "2025-04-16T00:53:13.573",
        "MJD-BEG": 60781.03696264839,
        "DATE-END": "2025-04-16T00:53:29.528",
        "MJD-END": 60781.03714731056,
        "BUNIT": "adu",
        "TIMESYS": "TAI",
        "GROUPID": "2025-04-16T00:53:10.143",
        "INSTRUME": "lsstCam",
        "TELESCOP": "Simonyi Survey Telescope",
        "OBS-LONG": -70.749417,
        "OBS-LAT": -30.244639,
        "OBS-ELEV": 2663.0,
        "OBSGEO-X": 1818938.94,
        "OBSGEO-Y": -5208470.95,
        "OBSGEO-Z": -3195172.08,
        "RA": 127.50000000000001,
        "DEC": -44.2,
        "RASTART": 127.50084038794044,
        "DECSTART": -44.200057330111896,
        "RAEND": 127.5010044898294,
        "DECEND": -44.200055785031005,
        "ROTPA": 46.37529671133568,
        "ROTCOORD": "sky",
        "HASTART": 1.2744531794391214,
        "ELSTART": 69.3932099358283,
        "AZSTART": 221.749142212668,
        "AMSTART": 1.068223247777951,
        "HAEND": 1.2789155988970757,
        "ELEND": 69.3543593971811,
        "AZEND": 221.83062636553,
        "AMEND": 1.0684931801409645,
        "TRACKSYS": "RADEC",
        "RADESYS": "ICRS",
        "FOCUSZ": -2.856403126427015,
        "OBJECT": "Vela_SNR",
        "VIGNETTE": "NO",
        "VIGN_MIN": "NO",
        "TESTTYPE": "ACQ",
        "CAMCODE": "MC",
        "CONTRLLR": "O",
        "DAYOBS": "20250415",
        "SEQNUM": 60,
        "PROGRAM": "BLOCK-T434",
        "REASON": "first_focus",
        "CURINDEX": 1,
        "MAXINDEX": 1,
        "TSTAND": "TMAMCv1_SUM",
        "IMAGETAG": "c5af68adbf9f3249",
        "OBSANNOT": "",
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "CCDSLOT": "S01",
        "RAFTBAY": "R01",
        "FIRMWARE": "3139500e",
        "PLATFORM": "lsstcam",
        "CONTNUM": "18ed9486",
        "DAQVERS": "R5-V13.4 2025-03-20T16:46:35Z (811f588b)",
        "DAQPART": "camera",
        "DAQFOLD": "raw",
        "SEQFILE": "FP_ITL_2s_l3cp_v30.seq",
        "SEQNAME": "FP_ITL_2s_l3cp_v30.seq",
        "SEQCKSUM": "1781310301",
        "LSST_NUM": "ITL-3800C-226",
        "CCD_SERN": "23000",
        "REBNAME": "LCA-13574-055",
        "RAFTNAME": "LCA-11021_RTM-011",
        "FPVERS": "1.2.13-SNAPSHOT",
        "IHVERS": "1.1.8",
        "FILTBAND": "i",
        "FILTER": "i_39",
        "FILTPOS": 309.0,
        "FILTSLOT": 2,
        "EXPTIME": 15.0,
        "DARKTIME": 15.9548,
        "SHUTTIME": 15.000998497009277,
        "AIRTEMP": 11.024999618530273,
        "PRESSURE": 74390.0,
        "HUMIDITY": 33.400001525878906,
        "WINDSPD": 1.2510000467300415,
        "WINDDIR": 32.204994201660156,
        "SEEING": None,
        "HEADVER": 2,
        "FILENAME": "MC_O_20250415_000060_R01_S01.fits",
        "STUTTER ROWS": 0,
        "STUTTER DELAY": 0.0,
        "STUTTER NSHIFTS": 0,
    }
)
"""Primary header of LSSTCam ``MC_O_20250415_000060`` detector R01_S01 (an ACQ frame)."""


PRIMARY_TEMPLATES: Final[Mapping[str, Mapping[str, object]]] = MappingProxyType(
    {"ComCam": COMCAM_PRIMARY, "LATISS": LATISS_PRIMARY, "LSSTCam": LSSTCAM_PRIMARY}
)
"""Primary-header template per canonical instrument name."""

FILTERS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "ComCam": MappingProxyType({"u": "u_02", "g": "g_01", "r": "r_03", "i": "i_06", "z": "z_03", "y": "y_04"}),
        "LATISS": MappingProxyType(
            {"g": "SDSSg_65mm", "r": "SDSSr_65mm", "i": "SDSSi_65mm", "z": "SDSSz_65mm", "y": "SDSSy_65mm"}
        ),
        "LSSTCam": MappingProxyType({"u": "u_24", "g": "g_6", "r": "r_57", "i": "i_39", "z": "z_20", "y": "y_10"}),
    }
)
"""Physical filter name (FILTER) per band (FILTBAND) and instrument."""

SHUTTER_OVERHEAD_S: Final[Mapping[str, float]] = MappingProxyType({"ComCam": 0.431, "LATISS": 0.240, "LSSTCam": 0.955})
"""DATE-END - DATE-BEG - EXPTIME in the templates: shutter motion and read start; DARKTIME is about the same."""

AMPLIFIERS: Final[tuple[str, ...]] = tuple(f"Segment1{x}" for x in range(8)) + tuple(
    f"Segment0{x}" for x in range(7, -1, -1)
)
"""Image extension names of a 16-amplifier sensor, in the order the camera writes them."""


def amplifier_cards(index: int) -> dict[str, object]:
    """Return the cards of the ``index``-th amplifier extension (0-based, in :data:`AMPLIFIERS` order)."""
    name = AMPLIFIERS[index]
    row, column = int(name[-2]), int(name[-1])
    if row == 1:
        detsec = f"[{509 * (column + 1)}:{509 * column + 1},1:2000]"
    else:
        detsec = f"[{509 * column + 1}:{509 * (column + 1)},4000:2001]"
    return {
        "EXTNAME": name,
        "CHANNEL": index + 1,
        "CCDSUM": "1 1",
        "DATASEC": "[4:512,1:2000]",
        "DETSEC": detsec,
        "DETSIZE": "[1:4072,1:4000]",
        "BUNIT": "adu",
    }


def header_from_cards(cards: Mapping[str, object]) -> fits.Header:
    """Build a header from ordered cards without FITS warnings.

    Keywords longer than 8 characters or containing spaces become HIERARCH cards (as the camera writes
    them); a None value becomes a card with a null value.

    Args:
        cards: Keyword -> value, in card order.

    Returns:
        A new header.
    """
    header = fits.Header()
    for keyword, value in cards.items():
        key = keyword if len(keyword) <= 8 and " " not in keyword else f"HIERARCH {keyword}"
        header[key] = value
    return header


def template_header(instrument: str) -> fits.Header:
    """Return the real primary header a template was copied from, as a FITS header.

    Args:
        instrument: Canonical instrument name: ``"ComCam"``, ``"LATISS"`` or ``"LSSTCam"``.
    """
    return header_from_cards(PRIMARY_TEMPLATES[instrument])


_BROKEN_LATISS_CARDS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SIMPLE": True,
        "EXTEND": True,
        "ORIGIN": "LSST DM Header Service",
        "DATE": "2019-03-06T19:37:57.244",
        "DATE-OBS": "2019-03-06T19:37:54.309",
        "MJD": 58548.8180236578,
        "MJD-OBS": 58548.8179896848,
        "OBS-LONG": -70.749417,
        "OBS-LAT": -30.244639,
        "OBS-ELEV": 2663.0,
        "OBS-NITE": "20190306",
        "TELESCOP": "LSST AuxTelescope",
        "INSTRUME": "LATISS",
        "RATEL": None,
        "DECTEL": None,
        "RA": None,
        "DEC": None,
        "PROGRAM": None,
        "OBSERVER": None,
        "SEQFILE": None,
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "CCD_SERN": "20429",
        "LSST_NUM": "ITL-3800C-098",
        "RAFTNAME": "LCA-11021_RTM-004_ETU2-Dev",
        "SEQNAME": None,
        "IMGNAME": "AT_O_20190306_000014",
        "IMGTYPE": None,
        "OVERH": 64,
        "OVERV": 48,
        "PREH": 3,
        "TEMP_SET": None,
        "CCDTEMP": None,
        "FILTER": None,
        "FILTPOS1": None,
        "GRATING": None,
        "FILTPOS2": None,
        "BUNIT": "adu",
        "EXPTIME": 1.06,
        "SHUT_DEL": None,
        "FILENAME": "AT_O_20190306_000014.fits",
        "HEADVER": "ACCS_MCM/OCS_Bridge",
        "CCDGAIN": None,
        "CCDNOISE": None,
    }
)


def broken_latiss_header() -> fits.Header:
    """Return a header shaped like LATISS ``AT_O_20190306_000014`` as the summit wrote it in 2019.

    IMGTYPE and FILTER are null; there is no OBSID (only IMGNAME), no DAYOBS, SEQNUM, TIMESYS,
    DARKTIME, RAFTBAY or CCDSLOT.
    """
    return header_from_cards(_BROKEN_LATISS_CARDS)


_IMSIM_CARDS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SIMPLE": True,
        "EXTEND": True,
        "WCSAXES": 2,
        "MJD-OBS": 59797.285409,
        "DATE-OBS": "2022-08-06T06:50:59.338",
        "EXPTIME": 30.0,
        "RADESYS": "ICRS",
        "EXTTYPE": "IMAGE",
        "FILTER": "i",
        "RATEL": 31.1133844,
        "DECTEL": -10.097006,
        "ROTANGLE": 69.092293,
        "CHIPID": "R11_S20",
        "OBSID": 5000007,
        "OUTFILE": "lsst_a_5000007_R11_S20_i.fits",
        "RUNNUM": "5000007",
        "DARKTIME": 30.0,
        "LSST_NUM": "LCA-11021_RTM-000",
        "TESTTYPE": "IMSIM",
        "IMGTYPE": "FLAT",
        "MONOWL": -1,
        "RAFTNAME": "R11",
        "SENSNAME": "S20",
        "GAIN": 1.7,
    }
)


def imsim_header() -> fits.Header:
    """Return a header shaped like an imsim simulated flat (``lsst_a_5000007_R11_S20_i``).

    It has no INSTRUME, DAYOBS, SEQNUM, TIMESYS, RAFTBAY or CCDSLOT, and OBSID is the integer visit id
    rather than an observation id string, so no real OBSID can be derived.
    """
    return header_from_cards(_IMSIM_CARDS)
