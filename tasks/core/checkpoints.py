"""Training checkpoints as atomic, verifiable, resumable bundles on the project's storage.

Layout under the storage root (file:// or s3://, tasks/core/storage.py):

    runs/<run_id>/step_<step:08d>/<net>.safetensors   one per network ("G", "D", "DUR", "WD")
    runs/<run_id>/step_<step:08d>/state.pt            the training state (torch.save bytes)
    runs/<run_id>/step_<step:08d>/manifest.json       written after every object above
    runs/<run_id>/latest.json                         written LAST: {step, path, manifest_sha256}

A bundle is complete exactly when its manifest exists, and `latest.json` only ever names a
complete bundle, so a crash at any point leaves the previous checkpoint resumable; the partial
folder it leaves (no manifest) is removed by the next save's retention. The manifest records the
sha256 and size of every object, the metrics (e.g. val_loss) and the lineage (git commit, dvc.lock
and params.yaml hashes: never environment variables or credentials); `load` checks every object
against it.

`state.pt` is read back with `torch.load(..., weights_only=True)`, so the state may hold only:
tensors, dict (str/int keys), list, tuple, int, float, str, bool, None, bytes, torch.Size,
torch.dtype and torch.device. Optimizer and LR-scheduler `state_dict()`s qualify as they are;
numpy arrays and scalars, sets, custom classes and lambdas do not (`save` names the offending
path before writing anything). `rng_state()` gives python/numpy/torch(/cuda) RNG states in
those types; the trainer gathers one per rank and restores its own with `set_rng_state()`.

Only one process (rank 0) should save to a run. Retention, after each save: keep the latest
bundle plus the best `keep_best` by metrics["val_loss"] (lower is better; bundles without a finite
val_loss count only as latest), delete the other complete bundles at or before the latest step,
and delete folders without a manifest (crash leftovers) below the latest step. Bundles above the
latest step (e.g. after resuming from an older step) are left alone until training passes them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import random
import re
import subprocess
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import torch

from tasks.core.storage import Storage

logger = logging.getLogger(__name__)

FORMAT = "vitsflow-checkpoint/1"
STATE = "state.pt"
MANIFEST = "manifest.json"
LATEST = "latest.json"
NET_SUFFIX = ".safetensors"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_ORDER_KEY = "vitsflow.key_order"  # safetensors metadata: the state dict's key order


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the object and where."""


# ----------------------------------------------------------------------------- lineage


def _sha256_file(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def lineage(root: Path) -> dict:
    """Where a checkpoint came from: {git_commit, git_dirty, dvc_lock_sha256, params_sha256}.

    git_commit is None outside a repository (git_dirty then False). Hashes are of the files' bytes
    (None when absent). Nothing from the environment is included. `--no-optional-locks` keeps
    `git status` from taking the index lock, so it never collides with a concurrent commit."""
    root = Path(root)
    head = _git(root, "rev-parse", "--verify", "HEAD")
    commit = head.strip() if head else None
    status = _git(root, "status", "--porcelain") if commit else None
    return {"git_commit": commit,
            "git_dirty": bool(status and status.strip()),
            "dvc_lock_sha256": _sha256_file(root / "dvc.lock"),
            "params_sha256": _sha256_file(root / "params.yaml")}


# ----------------------------------------------------------------------------- RNG state


def all_rng_states(world: int) -> list[dict]:
    """Every rank's rng_state(), gathered (a collective: every rank calls it), for the bundle rank 0
    saves; [rng_state()] in one process."""
    if world <= 1:
        return [rng_state()]
    import torch.distributed as dist

    states: list = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def read_stage_record(path: Path, stage: str, switch: str, what: str, error: type = ValueError) -> dict:
    """A training stage's run record (train/<stage>.json), as `error` naming the file when it is
    unreadable, says the stage was off (params `switch` false: no `what` to load), or has no
    checkpoint.uri."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise error(f"{path}: not a readable run record ({err})") from None
    if record.get("enabled") is False:
        raise error(f"{path}: the {stage} stage is off (params {switch} is false): no {what} to load")
    if not isinstance(record.get("checkpoint"), dict) or "uri" not in record["checkpoint"]:
        raise error(f"{path}: not a {stage} run record (no checkpoint.uri)")
    return record


def stage_record_if_on(path: Path, read) -> Optional[dict]:
    """`read(path)` (a read_stage_record) when the record exists and does not say the stage was
    off; else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("enabled") is False:
            return None
    except (ValueError, AttributeError):
        pass  # read names the file and the reason
    return read(path)


def rng_state() -> dict:
    """This process's RNG states (python `random`, numpy's global generator, torch CPU and every
    CUDA device when available) in types `torch.load(weights_only=True)` accepts."""
    import numpy as np

    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned (parts it lacks are left as they are). CUDA states are
    restored for the devices present; a different device count is a warning, not an error."""
    import numpy as np

    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()),
                         py["gauss_next"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state({"bit_generator": n["bit_generator"],
                             "state": {"key": np.asarray(n["key"].tolist(), dtype=np.uint32), "pos": int(n["pos"])},
                             "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        saved, count = list(state["cuda"]), torch.cuda.device_count()
        if len(saved) != count:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(saved)} devices, this process sees {count}; "
                          f"restoring the first {min(len(saved), count)}")
        for i, t in enumerate(saved[:count]):
            torch.cuda.set_rng_state(t.to(device="cpu", dtype=torch.uint8), i)


# ----------------------------------------------------------------------------- (de)serialising

_ATOMS = (type(None), bool, int, float, str, bytes, torch.Size, torch.dtype, torch.device)


def check_state(value: Any, path: str = "state") -> None:
    """Raise TypeError naming the first value `torch.load(weights_only=True)` would refuse."""
    if isinstance(value, torch.Tensor):
        if value.is_sparse or value.layout != torch.strided:
            raise TypeError(f"{path}: sparse/non-strided tensors are not supported in a checkpoint state")
        return
    if isinstance(value, _ATOMS) and type(value).__module__ in ("builtins", "torch"):
        return
    if isinstance(value, dict) and type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{path}: key {k!r} of type {type(k).__name__}; expected str or int keys")
            check_state(v, f"{path}[{k!r}]")
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            check_state(v, f"{path}[{i}]")
        return
    hint = " (convert numpy values with torch.from_numpy(...) or .tolist(); RNG states with rng_state())" \
        if type(value).__module__.startswith("numpy") else ""
    raise TypeError(f"{path}: {type(value).__module__}.{type(value).__qualname__} cannot be loaded with "
                    f"torch.load(weights_only=True); allowed: tensors, dict, list, tuple, int, float, str, bool, "
                    f"None, bytes, torch.Size/dtype/device{hint}")


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _net_bytes(name: str, sd: dict) -> bytes:
    from safetensors.torch import save

    tensors: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    seen: set[int] = set()
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"nets[{name!r}][{key!r}]: {type(t).__name__}; a net's state dict holds tensors only")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:  # safetensors refuses tensors sharing memory (tied weights)
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        tensors[key] = t
    return save(tensors, metadata={_ORDER_KEY: json.dumps(list(tensors))})


def _net_from_bytes(data: bytes) -> "OrderedDict[str, torch.Tensor]":
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    order = json.loads(meta[_ORDER_KEY]) if _ORDER_KEY in meta else sorted(tensors)
    return OrderedDict((k, tensors[k]) for k in order if k in tensors)


def _jsonable(value: Any, path: str) -> Any:
    """Metrics/lineage as JSON: numpy/0-d tensor scalars become numbers, non-finite floats None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif hasattr(value, "item") and type(value).__module__.startswith("numpy"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}.{i}") for i, v in enumerate(value)]
    raise TypeError(f"{path}: {type(value).__name__} is not JSON-serialisable")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _val_loss(manifest: dict) -> Optional[float]:
    v = (manifest.get("metrics") or {}).get("val_loss")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


# ----------------------------------------------------------------------------- the store


class CheckpointStore:
    """Checkpoint bundles of one training run, under `runs/<run_id>/` of `storage`."""

    def __init__(self, storage: Storage, run_id: str):
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ValueError(f"run_id {run_id!r}: expected letters, digits, '_', '-' or '.'")
        self.storage, self.run_id = storage, run_id
        self.prefix = f"runs/{run_id}/"

    # -- paths
    @staticmethod
    def bundle_name(step: int) -> str:
        return f"step_{step:08d}"

    def bundle_prefix(self, step: int) -> str:
        return f"{self.prefix}{self.bundle_name(step)}/"

    def describe(self, key: str = "") -> str:
        return self.storage.describe(f"{self.prefix}{key}")

    # -- writing
    def save(self, step: int, nets: dict[str, dict[str, torch.Tensor]], state: dict, metrics: dict,
             lineage: dict, keep_best: int = 3) -> dict:
        """Write bundle `step` (objects, then manifest, then latest.json), apply retention and return
        the manifest. Everything is validated before anything is written."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        if keep_best < 0:
            raise ValueError(f"keep_best: expected >= 0, got {keep_best}")
        if not nets:
            raise ValueError("nets: expected at least one network state dict")
        for name in nets:
            if not isinstance(name, str) or not _NET_NAME.match(name) or name in ("state", "manifest", "latest"):
                raise ValueError(f"nets: name {name!r}: expected letters, digits, '_' or '-' (e.g. 'G', 'D', "
                                 "'DUR', 'WD'), not 'state'/'manifest'/'latest'")
        for name, sd in nets.items():
            for key, t in sd.items():
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"nets[{name!r}][{key!r}]: {type(t).__name__}; a net's state dict holds "
                                    "tensors only")
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        check_state(state)
        # Serialised one object at a time: host memory peaks at the largest object, not the bundle.
        payload = [(f"{name}{NET_SUFFIX}", lambda name=name, sd=sd: _net_bytes(name, sd)) for name, sd in nets.items()]
        payload.append((STATE, lambda: _state_bytes(state)))
        metrics_json = _jsonable(dict(metrics or {}), "metrics")
        lineage_json = _jsonable(dict(lineage or {}), "lineage")

        prefix = self.bundle_prefix(step)
        # A folder already at this step (an abandoned run past this point, or a repeated save):
        # drop its manifest first, so no reader can take it for complete while it is rewritten.
        if any(True for _ in self.storage.list(prefix)):
            logger.warning("checkpoint %s exists; replacing it", self.storage.describe(prefix))
            self.storage.delete(prefix + MANIFEST)
            self.storage.delete_prefix(prefix)

        objects = {}
        for name, serialise in payload:
            data = serialise()
            self.storage.write_bytes(prefix + name, data)
            objects[name] = {"sha256": _sha256(data), "bytes": len(data)}
            del data
        manifest = {"format": FORMAT, "run_id": self.run_id, "step": step,
                    "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "path": prefix, "objects": objects, "metrics": metrics_json, "lineage": lineage_json}
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
        self.storage.write_bytes(prefix + MANIFEST, manifest_bytes)
        pointer = {"run_id": self.run_id, "step": step, "path": self.bundle_name(step),
                   "manifest_sha256": _sha256(manifest_bytes), "updated_at": manifest["created_at"]}
        self.storage.write_bytes(self.prefix + LATEST, json.dumps(pointer, indent=2).encode() + b"\n")
        logger.info("checkpoint step %d saved to %s (%d objects, %.1f MB)", step, self.storage.describe(prefix),
                    len(objects), sum(o["bytes"] for o in objects.values()) / 1e6)
        try:
            self.apply_retention(keep_best, latest_step=step)
        except Exception as err:  # the checkpoint is safe; cleanup is tried again on the next save
            logger.warning("checkpoint retention in %s failed (retried next save): %s: %s",
                           self.describe(), type(err).__name__, err)
        return manifest

    # -- reading
    def _step_folders(self) -> dict[int, set[str]]:
        """step -> names of the objects in its folder."""
        folders: dict[int, set[str]] = {}
        for key in self.storage.list(self.prefix):
            parts = key[len(self.prefix):].split("/") if key.startswith(self.prefix) else []
            if len(parts) >= 2:
                m = _STEP_DIR.match(parts[0])
                if m:
                    folders.setdefault(int(m.group(1)), set()).add("/".join(parts[1:]))
        return folders

    def _read_manifest(self, step: int) -> tuple[dict, bytes]:
        key = self.bundle_prefix(step) + MANIFEST
        try:
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint step {step} of run {self.run_id!r}: no complete bundle "
                                  f"({self.storage.describe(key)} not found)") from None
        try:
            manifest = json.loads(data)
        except ValueError as err:
            raise CheckpointError(f"{self.storage.describe(key)}: not valid JSON: {err}") from None
        if (not isinstance(manifest, dict) or manifest.get("step") != step
                or not isinstance(manifest.get("objects"), dict)):
            raise CheckpointError(f"{self.storage.describe(key)}: not a checkpoint manifest for step {step}")
        return manifest, data

    def _check_complete(self, manifest: dict) -> None:
        """Every object the manifest lists exists with the recorded size."""
        prefix = self.bundle_prefix(manifest["step"])
        for name, info in manifest["objects"].items():
            try:
                size = self.storage.size(prefix + name)
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint step {manifest['step']}: object {name!r} is missing "
                                      f"({self.storage.describe(prefix + name)})") from None
            if size != info.get("bytes"):
                raise CheckpointError(f"checkpoint step {manifest['step']}: object {name!r} has {size} bytes, "
                                      f"the manifest says {info.get('bytes')} ({self.storage.describe(prefix + name)})")

    def latest(self) -> Optional[dict]:
        """The manifest latest.json points at (its sha256 and every object's presence and size
        checked), or None when the run has no checkpoint. If the bundle it names is broken (e.g.
        deleted by hand), falls back with a warning to the newest complete bundle below it."""
        try:
            pointer = json.loads(self.storage.read_bytes(self.prefix + LATEST))
            step = int(pointer["step"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.describe(LATEST)}: unreadable: {err}") from None
        try:
            manifest, data = self._read_manifest(step)
            if _sha256(data) != pointer.get("manifest_sha256"):
                raise CheckpointError(f"{self.storage.describe(self.bundle_prefix(step) + MANIFEST)}: sha256 "
                                      f"differs from {self.describe(LATEST)}")
            self._check_complete(manifest)
            return manifest
        except CheckpointError as err:
            problem = err
        for older in sorted((s for s, names in self._step_folders().items() if s < step and MANIFEST in names),
                            reverse=True):
            try:
                manifest, _ = self._read_manifest(older)
                self._check_complete(manifest)
            except CheckpointError:
                continue
            logger.warning("%s; falling back to step %d", problem, older)
            return manifest
        raise CheckpointError(f"{problem}; and no older complete checkpoint in {self.describe()}")

    def list_bundles(self) -> list[dict]:
        """The manifests of every complete bundle (one with a manifest), by step."""
        out = []
        for step, names in sorted(self._step_folders().items()):
            if MANIFEST in names:
                try:
                    out.append(self._read_manifest(step)[0])
                except CheckpointError as err:
                    logger.warning("skipping %s", err)
        return out

    def load(self, step: Optional[int] = None, verify: bool = True
             ) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
        """(nets, state, manifest) of bundle `step` (None: the latest). With `verify`, every
        object's size and sha256 must match the manifest (CheckpointError names the object).
        Tensors come back on the CPU; state.pt is read with weights_only=True."""
        if step is None:
            manifest = self.latest()
            if manifest is None:
                raise CheckpointError(f"no checkpoint in {self.describe()} (no {LATEST})")
        else:
            manifest, _ = self._read_manifest(step)
        prefix = self.bundle_prefix(manifest["step"])
        nets: dict[str, dict[str, torch.Tensor]] = {}
        state: Optional[dict] = None
        for name, info in manifest["objects"].items():
            where = self.storage.describe(prefix + name)
            try:
                data = self.storage.read_bytes(prefix + name)
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint step {manifest['step']}: object {name!r} is missing "
                                      f"({where})") from None
            if verify:
                digest = _sha256(data)
                if len(data) != info.get("bytes") or digest != info.get("sha256"):
                    raise CheckpointError(
                        f"checkpoint step {manifest['step']}: object {name!r} is corrupt ({where}): "
                        f"{len(data)} bytes, sha256 {digest}; the manifest says {info.get('bytes')} bytes, "
                        f"sha256 {info.get('sha256')}")
            try:
                if name == STATE:
                    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                elif name.endswith(NET_SUFFIX):
                    nets[name[:-len(NET_SUFFIX)]] = _net_from_bytes(data)
            except Exception as err:
                raise CheckpointError(f"checkpoint step {manifest['step']}: object {name!r} cannot be read "
                                      f"({where}): {type(err).__name__}: {err}") from err
        if state is None:
            raise CheckpointError(f"checkpoint step {manifest['step']}: the manifest lists no {STATE} ({prefix})")
        return nets, state, manifest

    # -- retention
    def apply_retention(self, keep_best: int = 3, latest_step: Optional[int] = None) -> list[int]:
        """Keep the latest bundle and the best `keep_best` by val_loss; delete the other complete
        bundles up to the latest step and manifest-less folders below it. Returns deleted steps."""
        if latest_step is None:
            latest = self.latest()
            if latest is None:
                return []
            latest_step = latest["step"]
        folders = self._step_folders()
        complete = {m["step"]: m for m in self.list_bundles() if m["step"] <= latest_step}
        # Lowest val_loss first; on a tie the newer bundle wins.
        scored = sorted((_val_loss(m), -s) for s, m in complete.items() if _val_loss(m) is not None)
        keep = {latest_step} | {-neg for _, neg in scored[:keep_best]}
        doomed = [s for s in complete if s not in keep]
        orphans = [s for s, names in folders.items() if s < latest_step and MANIFEST not in names]
        for s in sorted(doomed):
            # Manifest first: a crash mid-way leaves an orphan folder, never a manifest without objects.
            self.storage.delete(self.bundle_prefix(s) + MANIFEST)
            self.storage.delete_prefix(self.bundle_prefix(s))
        for s in sorted(orphans):
            self.storage.delete_prefix(self.bundle_prefix(s))
        if doomed or orphans:
            logger.info("checkpoint retention in %s: kept %s; deleted %s, orphans %s", self.describe(),
                        sorted(keep & set(complete)), sorted(doomed), sorted(orphans))
        return sorted(doomed + orphans)
