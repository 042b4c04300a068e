"""``adassr upscale --triton URL``: the upscale command's images served by a Triton Inference Server.

:class:`TritonImageUpscaler` adapts :class:`~adassr.runtime.server.triton_client.TritonUpscaler`
(client-side tiling, tritonclient over HTTP) to the upscale command's upscaler interface, so the
command's batch loop (folders, bad files skipped and named, atomic output writes, exit codes) is
the same as with the local models.

Model choice per image, as ``adassr export --triton-repo`` names the models (``<prefix><camera>``):
``--triton-model NAME`` for every image; else ``--camera NAME`` -> ``<prefix>NAME``; else the
image's camera by :func:`adassr.runtime.routing.route_by_image` (folder, EXIF Make, name prefix)
when the server has that model ready; else ``<prefix>_fallback``.

Checked once before the first image (one-line error, exit 2): tritonclient is installed, the
server answers that it is live, and an explicitly chosen model (``--triton-model`` or ``--camera``)
is one the server has and that ``--triton-repo`` wrote. Tiles have the model's fixed tile shape
(from its Triton config); ``--tile-overlap`` and ``--pre-pad`` apply as for local models.
"""

from __future__ import annotations

from dataclasses import dataclass

from adassr.runtime.errors import ConfigError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import OutputCheck, UpscaleResult, check_outscale
from adassr.runtime.server.triton_client import DEFAULT_PREFIX, TritonUpscaler, camera_model_name, triton_url
from adassr.runtime.tiling import DEFAULT_PRE_PAD, MAX_PRE_PAD
from adassr.runtime.upscalers import TileProgress

CONNECT_TIMEOUT_S = 10.0
"""How long to wait for a TCP connection to the server before giving up."""


@dataclass(frozen=True)
class TritonRunOptions:
    """Where the Triton server is and how its models are chosen and tiled."""

    url: str
    model: str | None = None  # one model for every image (else camera routing)
    prefix: str = DEFAULT_PREFIX
    overlap: int | None = None  # None: the default, shrunk to fit a small tile; a number must fit
    pre_pad: int = DEFAULT_PRE_PAD
    outscale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", triton_url(self.url))
        if self.model is not None and not self.model.strip():
            raise ConfigError("--triton-model is empty; name a model of the Triton repository")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"--tile-overlap must be 0 or more, got {self.overlap}")
        if not 0 <= self.pre_pad <= MAX_PRE_PAD:  # as without --triton: before any image, not at each
            raise ConfigError(f"--pre-pad must be from 0 to {MAX_PRE_PAD} LR pixels (context for the borders; more "
                              f"only costs time), got {self.pre_pad}")
        check_outscale(self.outscale)


class TritonImageUpscaler:
    """Serves images through Triton; built by :func:`open_triton` (which checks the server first)."""

    def __init__(self, client: TritonUpscaler, options: TritonRunOptions) -> None:
        self._client = client
        self._options = options

    def _choose(self, image: LoadedImage, camera: str | None) -> tuple[str, str]:
        """``(model name, reason)`` for one image."""
        if self._options.model is not None:
            return self._options.model, "--triton-model"
        if camera is not None:
            return camera_model_name(self._options.prefix, camera), "explicit"
        return self._client.route(image)

    def upscale(
        self, image: LoadedImage, *, camera: str | None = None, progress: TileProgress | None = None,
        check_output: OutputCheck | None = None,
    ) -> UpscaleResult:
        name, reason = self._choose(image, camera)
        pixels, alpha, served = self._client.upscale(
            image, model=name, outscale=self._options.outscale, progress=progress, check_output=check_output
        )
        scale = self._client.model_info(served).scale
        outscale = float(scale if self._options.outscale is None else self._options.outscale)
        return UpscaleResult(pixels, alpha, image.bit_depth, scale, outscale,
                             model_name=f"{served} on Triton, {reason}")

    def close(self) -> None:
        self._client.close()


def open_triton(options: TritonRunOptions, *, camera: str | None) -> TritonImageUpscaler:
    """A connected upscaler; ``ConfigError``/``BackendError`` (one line) when it cannot serve at all."""
    client = TritonUpscaler(options.url, prefix=options.prefix, overlap=options.overlap,
                            pre_pad=options.pre_pad, connect_timeout_s=CONNECT_TIMEOUT_S)
    try:
        client.check_live()
        explicit = options.model or (camera_model_name(options.prefix, camera) if camera is not None else None)
        if explicit is not None:
            # an unknown or foreign model, or an overlap its tile cannot take: a whole-run error, not one per image
            client.tiling_for(client.model_info(explicit))
    except BaseException:
        client.close()
        raise
    return TritonImageUpscaler(client, options)
