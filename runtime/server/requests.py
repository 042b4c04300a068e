"""Request parsing for ``POST /v1/upscale``: options, multipart bodies, and JSON errors.

Options come from query parameters or multipart text fields (one source each); the image from
the body or the multipart file part named ``image``. Everything invalid becomes an
:class:`HttpError` whose message says what to send instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse

from adassr.runtime.cameras import camera_name
from adassr.runtime.errors import CameraError, ConfigError
from adassr.runtime.images import check_quality
from adassr.runtime.images.convert import parse_sample_bits
from adassr.runtime.server import request_ids
from adassr.runtime.server.config import OUTPUT_FORMATS

PARAMETERS = ("camera", "outscale", "format", "quality", "exif", "sample_bits")
MAX_FORM_FIELDS = 32
"""Text fields a multipart body may hold (more: 400); unknown or repeated ones among them get 422."""


class HttpError(Exception):
    """An error answered as ``{"error", "status", "message", "request_id"}`` JSON (``request_id``: the
    request's ``X-Request-ID``, :mod:`adassr.runtime.server.request_ids`)."""

    def __init__(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": self.kind, "status": self.status, "message": self.message,
                "request_id": request_ids.current.get()}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class UpscaleParams:
    """Validated options of one upscale request (``suffix``/``media_type`` from ``format``)."""

    camera: str | None
    outscale: float | None
    suffix: str
    media_type: str
    quality: int
    exif: bool | None = None  # carry the upload's EXIF into the output (False: none; None: not said)
    sample_bits: int | None = None  # a 16-bit upload's samples' bits (None: auto, the values decide)


_NEGOTIATED = (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp"))  # ties: the first


def negotiated_format(accept: str | None) -> str:
    """The output format an ``Accept`` header asks for: the image type it gives the highest q-value (the
    most specific of its media ranges decides each type's; ties go to PNG, then JPEG), PNG without the
    header, or when it accepts none of them (such a header is disregarded, as RFC 9110 allows, rather
    than refused: HTTP libraries send ``Accept: application/json`` by default)."""
    if not accept:
        return "png"
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *parameters = (field.strip() for field in part.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = math.nan
        if media and math.isfinite(q) and 0 <= q <= 1:  # a malformed range is left out
            ranges.append((media.lower(), q))

    def quality(media_type: str) -> float:
        best: tuple[int, float] | None = None  # (specificity, q)
        for media, q in ranges:
            specificity = {media_type: 2, media_type.split("/")[0] + "/*": 1, "*/*": 0}.get(media)
            if specificity is not None and (best is None or specificity > best[0]):
                best = (specificity, q)
        return 0.0 if best is None else best[1]

    (best, _), key = max(((quality(media_type), -rank), key) for rank, (key, media_type) in enumerate(_NEGOTIATED))
    return key if best > 0 else "png"


def parse_params(values: Mapping[str, str], max_outscale: float, accept: str | None = None) -> UpscaleParams:
    """Validate request options (HttpError 422 naming the parameter and the valid values); without a
    ``format``, the ``accept`` header picks it (:func:`negotiated_format`)."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise HttpError(
            422, "invalid_parameter",
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; valid: {', '.join(PARAMETERS)}"
        )
    camera = values.get("camera") or None
    if camera is not None:
        try:  # a name no group can have is refused before the body is decoded (the registry checks it again)
            camera_name(camera)
        except CameraError as exc:
            raise HttpError(422, "invalid_parameter", str(exc)) from None
    outscale: float | None = None
    if values.get("outscale") not in (None, ""):
        try:
            outscale = float(values["outscale"])
        except ValueError:
            outscale = math.nan
        if not math.isfinite(outscale) or not 0 < outscale <= max_outscale:
            raise HttpError(
                422,
                "invalid_parameter",
                f"outscale must be a number in (0, {max_outscale:g}], got {values['outscale']!r}",
            )
    fmt = (values.get("format") or negotiated_format(accept)).lower()
    if fmt not in OUTPUT_FORMATS:
        raise HttpError(
            422, "invalid_parameter", f"format {values.get('format')!r} is not supported; use png, jpeg or webp"
        )
    quality = 95
    if values.get("quality") not in (None, ""):
        text = values["quality"]
        try:
            quality = check_quality(int(text) if text.isascii() and text.isdigit() else text)
        except ConfigError as exc:
            raise HttpError(422, "invalid_parameter", str(exc)) from None
    suffix, media_type = OUTPUT_FORMATS[fmt]
    exif: bool | None = None
    if values.get("exif") not in (None, ""):
        choice = _BOOLEANS.get(values["exif"].strip().lower())
        if choice is None:
            raise HttpError(422, "invalid_parameter", f"exif must be true or false (1 or 0), got {values['exif']!r}")
        exif = choice
    sample_bits: int | None = None
    if values.get("sample_bits") not in (None, ""):
        try:
            sample_bits = parse_sample_bits(values["sample_bits"])
        except ConfigError as exc:
            raise HttpError(422, "invalid_parameter", str(exc).replace("sample bits", "sample_bits", 1)) from None
    return UpscaleParams(camera, outscale, suffix, media_type, quality, exif, sample_bits)


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


MAX_FIELD_BYTES = 64 * 1024
"""The largest text field of a multipart body (the options are a few characters each)."""


_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def _closing_delimiter(headers: Headers) -> bytes | None:
    """``--<boundary>--``, the line that ends a multipart body (RFC 2046), or None without a boundary."""
    match = _BOUNDARY.search(headers.get("content-type", ""))
    if match is None:
        return None
    return b"--" + (match.group(1) or match.group(2)).encode("latin-1", "replace") + b"--"


async def parse_multipart(headers: Headers, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The ``image`` file part's bytes and the text fields of a multipart body (HttpError 400/422)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    # Room for unknown and repeated fields, which parse_params / the loop below answer with 422 naming them
    # (at 4 the parser itself refused a fifth field as "malformed"); still a bound on what a client can send.
    # More than one file part is parsed, so that a stray one is named (with max_files=1 the parser refused it
    # as "Too many files" before it could be); all of them lie in the body, which is in memory already.
    parser = MultiPartParser(headers, stream(), max_files=MAX_FORM_FIELDS, max_fields=MAX_FORM_FIELDS,
                             max_part_size=MAX_FIELD_BYTES)
    # The body is in memory already: a file part over Starlette's 1 MiB spool limit went to a second copy in
    # $TMPDIR, outside the server's private upload folder (and a full $TMPDIR answered 500).
    parser.spool_max_size = len(body) + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "exceeded maximum size" in str(exc):  # a form field, not a file part, of more than a few words
            raise HttpError(
                400,
                "bad_request",
                f"a form field of the multipart body is over {MAX_FIELD_BYTES // 1024} KiB; is the image sent "
                "without a filename? Send it as a file part named 'image' (curl -F image=@photo.jpg; "
                'Content-Disposition: form-data; name="image"; filename="photo.jpg")',
            ) from None
        raise HttpError(
            400,
            "bad_request",
            f"malformed multipart body ({exc}); send one file part named 'image' plus optional "
            f"fields {', '.join(PARAMETERS)}, or send the image bytes as the body",
        ) from None
    try:
        image: bytes | None = None
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise HttpError(422, "invalid_parameter", f"the file part is named {name!r}; name it 'image'")
                if image is not None:
                    raise HttpError(422, "invalid_parameter", "the multipart body has two file parts named 'image'; "
                                                              "send one image per request")
                image = await value.read()
            elif name == "image":
                raise HttpError(400, "bad_request", "the part 'image' has no filename, so it reads as a text field; "
                                                    "send it as a file part (curl -F image=@photo.jpg; "
                                                    'Content-Disposition: form-data; name="image"; '
                                                    'filename="photo.jpg")')
            elif name in fields:
                raise HttpError(422, "invalid_parameter", f"field {name!r} given twice")
            else:
                fields[name] = value
        if image is None:
            closing = _closing_delimiter(headers)
            if closing is not None and closing not in body:  # the parser drops a part that never ended
                raise HttpError(
                    400,
                    "bad_request",
                    f"malformed multipart body: it ends before its closing boundary {closing.decode('latin-1')!r}, "
                    "so its last part is incomplete; was the upload cut short? Send the whole body",
                )
            raise HttpError(
                400,
                "bad_request",
                "the multipart body has no file part named 'image'; attach the image as -F image=@photo.jpg",
            )
        return image, fields
    finally:
        await form.close()
