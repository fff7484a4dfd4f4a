"""Image-tower embeddings, computed once and shared by every cell and process (issue 20).

Without it each benign cell re-embedded its COCO images and each Text-on-Pair cell its concept
folder, loading the frozen image tower every time. Here a row is one image's embedding by one tower,
content-addressed, so any later run that needs it (the same set, a subset or a superset) reads it:

    cache_root()/image_embeddings/
        file_hashes.json                      sha256 memo: resolved path -> [size, mtime_ns, sha256]
        <tower key>/tower.safetensors         the tower's logit_scale (+ SigLIP's logit_bias) and dim
        <tower key>/rows/<ab>/<sha256>.safetensors    one [dim] float32 row per image (ab: its first 2 hex)

- tower key: config_hash of what fixes the numbers, found without loading the model: a local
  checkpoint's `*.safetensors`, config.json and preprocessor_config.json (sha256 of their bytes); a hub
  id's snapshot commit in the local HF cache (it pins every file), or the id and "main" while it is not
  cached (its rows are then keyed apart from the commit's); plus core/image_tower.py and the torch and
  transformers versions (preprocessing and numerics).
- row key: sha256 of the image file's bytes; a set's key (in manifests) hashes its rows' keys in order.

Files are written atomically (a temporary file, then os.replace); one process per tower embeds at a
time (a FileLock), the others wait and then read its rows. The tower is loaded only on a miss, on the
job's device. A row is computed in the batch that first needed it (rows of one image from different
batches agree to float rounding, ~1e-6), and every later run reads exactly those numbers. A cached
file that cannot be read is recomputed, with a warning.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file

from core.cache import cache_root
from core.image_tower import ImageTower, load_image_tower
from core.loading import check_model_dir, is_hub_id
from core.precision import full_precision
from core.provenance import config_hash, file_sha256, source_hash
from core.store import atomic_write

log = logging.getLogger("amdet")
TOWER_FILES = ("config.json", "preprocessor_config.json")  # hashed with the checkpoint's *.safetensors
META = "tower.safetensors"
MEMO = "file_hashes.json"


def embeddings_root() -> Path:
    return cache_root() / "image_embeddings"


@dataclass
class CachedEmbeddings:
    rows: torch.Tensor  # [N, dim] float32 on CPU, row i embeds paths[i]
    logit_scale: torch.Tensor  # the tower's, 0-d
    logit_bias: torch.Tensor | None  # SigLIP's, 0-d; None for CLIP
    tower_key: str
    set_key: str  # hash of the rows' image hashes, in order
    images: int  # distinct images (by content) among the rows
    computed: int  # of them embedded by this call (0: all from the cache)
    device: str  # where those were embedded ("" when none were)

    def describe(self) -> str:
        """Where the embeddings came from, for manifests."""
        where = f"image_embeddings/{self.tower_key}, set {self.set_key}"
        if not self.computed:
            return f"image embeddings from the cache ({where})"
        return f"image embeddings: {self.computed} of {self.images} computed on {self.device} and cached ({where})"


def read_memo(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(memo, dict):
            return memo
        raise ValueError("not a JSON object")
    except (ValueError, OSError) as exc:
        log.warning("ignoring unreadable file-hash memo %s (%s); hashing the files again", path, exc)
        return {}


def file_hashes(paths: list[Path]) -> list[str]:
    """sha256 of each file's bytes, memoised on (resolved path, size, mtime_ns): checkpoints are GBs."""
    memo_path = embeddings_root() / MEMO
    memo, fresh, hashes = read_memo(memo_path), {}, []
    for path in paths:
        stat, name = path.stat(), str(Path(path).resolve())
        entry = memo.get(name)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            hashes.append(entry[2])
        else:
            fresh[name] = [stat.st_size, stat.st_mtime_ns, file_sha256(path)]
            hashes.append(fresh[name][2])
    if fresh:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{memo_path}.lock"):  # merge with what other processes added meanwhile
            merged = {**read_memo(memo_path), **fresh}
            with atomic_write(memo_path) as tmp:
                tmp.write_text(json.dumps(merged, separators=(",", ":")), encoding="utf-8")
    return hashes


def tower_identity(name_or_path: str | os.PathLike) -> dict:
    """What fixes a tower's image embeddings, found without loading the model (see the module docstring)."""
    source = str(name_or_path)
    if is_hub_id(source):
        try:
            return {"hub": source, "commit": Path(snapshot_download(source, local_files_only=True)).name}
        except Exception:  # noqa: BLE001 — not in the local HF cache yet: the id is all there is
            return {"hub": source, "revision": "main"}
    path = Path(source).expanduser()
    check_model_dir(path)
    files = sorted(path.glob("*.safetensors")) + [path / n for n in TOWER_FILES if (path / n).is_file()]
    return dict(zip((f.name for f in files), file_hashes(files)))


def tower_key(identity: dict) -> str:
    """The cache key of a tower's `tower_identity`, with the code and libraries that shape its numbers."""
    return config_hash({
        "tower": identity,
        "code": source_hash("core/image_tower.py"),
        "torch": importlib.metadata.version("torch"),
        "transformers": importlib.metadata.version("transformers"),
    })


def row_path(folder: Path, image_hash: str) -> Path:
    return folder / "rows" / image_hash[:2] / f"{image_hash}.safetensors"


def read_safetensors(path: Path, what: str, warn: bool) -> dict[str, torch.Tensor] | None:
    """The tensors of a cached file; None when absent or unreadable (with a warning when `warn`)."""
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 — a cache entry is a shortcut: recompute it
        if warn:
            log.warning("recomputing the %s in %s: the cached file is unreadable (%s)", what, path, exc)
        return None


def read_meta(folder: Path, warn: bool) -> dict[str, torch.Tensor] | None:
    meta = read_safetensors(folder / META, "image tower's temperature", warn)
    if meta is not None and not ("dim" in meta and meta.get("logit_scale", torch.empty(0)).shape == ()):
        if warn:
            log.warning("recomputing the image tower's temperature in %s: the cached file lacks it", folder / META)
        return None
    return meta


def write_meta(folder: Path, tower: ImageTower, identity: dict) -> dict[str, torch.Tensor]:
    meta = {"logit_scale": tower.logit_scale, "dim": torch.tensor(tower.dim)}
    if tower.logit_bias is not None:
        meta["logit_bias"] = tower.logit_bias
    with atomic_write(folder / META) as tmp:
        save_file(meta, tmp, metadata={"family": tower.family, "tower": json.dumps(identity, sort_keys=True)})
    return meta


def read_row(folder: Path, image_hash: str, dim: int, warn: bool) -> torch.Tensor | None:
    path = row_path(folder, image_hash)
    tensors = read_safetensors(path, "image embedding", warn)
    if tensors is None:
        return None
    row = tensors.get("embedding")
    if row is None or row.shape != (dim,) or row.dtype != torch.float32 or not torch.isfinite(row).all():
        if warn:
            log.warning("recomputing the image embedding in %s: the cached row is not a finite [%d] float32", path, dim)
        return None
    return row


def write_row(folder: Path, image_hash: str, row: torch.Tensor, device: str) -> None:
    with atomic_write(row_path(folder, image_hash)) as tmp:
        save_file({"embedding": row.float().cpu().clone()}, tmp, metadata={"device": device})


def read_rows(folder: Path, hashes: list[str], dim: int, warn: bool) -> dict[str, torch.Tensor]:
    """hash -> row of the distinct `hashes` the cache holds."""
    return {h: row for h in dict.fromkeys(hashes) if (row := read_row(folder, h, dim, warn)) is not None}


def image_embeddings(tower: str | os.PathLike, paths: list[Path], device: str | torch.device = "cpu",
                     progress: bool = False) -> CachedEmbeddings:
    """[N, dim] image-tower embeddings of `paths` (not normalised), from the cache or computed and cached."""
    paths = [Path(p) for p in paths]
    identity = tower_identity(tower)
    key = tower_key(identity)
    folder = embeddings_root() / key
    hashes = file_hashes(paths)
    meta = read_meta(folder, warn=False)  # a quiet look first: only the locked one below warns
    rows = read_rows(folder, hashes, int(meta["dim"]), warn=False) if meta is not None else {}
    computed, where = 0, ""
    if meta is None or len(rows) < len(set(hashes)):
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / "embed.lock")):  # one embedder per tower; the others then read its rows
            meta, rows, computed, where = fill(folder, tower, identity, paths, hashes, device, progress)
    stacked = torch.stack([rows[h] for h in hashes]) if hashes else torch.empty(0, int(meta["dim"]))
    return CachedEmbeddings(stacked, meta["logit_scale"], meta.get("logit_bias"), key, config_hash(hashes),
                            len(set(hashes)), computed, where)


def fill(folder: Path, tower: str | os.PathLike, identity: dict, paths: list[Path], hashes: list[str],
         device: str | torch.device, progress: bool) -> tuple[dict, dict[str, torch.Tensor], int, str]:
    """Under the tower's lock: (meta, rows, rows computed, device) after embedding what is still missing
    (another process may have written it while this one waited)."""
    meta = read_meta(folder, warn=True)
    rows = read_rows(folder, hashes, int(meta["dim"]), warn=True) if meta is not None else {}
    todo = [h for h in dict.fromkeys(hashes) if h not in rows]
    if meta is not None and not todo:
        return meta, rows, 0, ""
    loaded = load_image_tower(tower, device)
    if meta is None:  # its rows (if any) are still good: read them with the tower's size
        meta = write_meta(folder, loaded, identity)
        rows = read_rows(folder, hashes, loaded.dim, warn=True)
        todo = [h for h in dict.fromkeys(hashes) if h not in rows]
    first: dict[str, Path] = {}  # hash -> the first path with those bytes
    for h, path in zip(hashes, paths):
        first.setdefault(h, path)
    where = str(loaded.device)
    with full_precision():  # cached rows are float32 numbers whatever the run's precision
        embedded = loaded.embed_images([first[h] for h in todo], progress=progress)
    for h, row in zip(todo, embedded):
        write_row(folder, h, row, where)
        rows[h] = row
    return meta, rows, len(todo), where if todo else ""
