"""The named models one server holds: pick one by name or kind, reload one beside the old, swap, drain the old.

A reload loads the new checkpoint in a thread, starts its own batching engine and warms it up while the
old version keeps answering; then one assignment swaps them. Requests that already hold the old version
finish on it; its engine stops once the last of them is done. A file that does not load (or does not
warm up) leaves the old version serving and the error on the model (`last_reload_error`) and in the log.
"""

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from service.batching import BatchingEngine
from service.loading import (
    ModelLoadError,
    ModelSource,
    ServedModel,
    UnusableFile,
    check_checkpoint_file,
    configured_sources,
    file_version,
    load_model,
)
from service.memory import MemoryBudget
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("service")

# (inode, size, mtime in ns): a file replaced by rename has a new inode even when size and mtime match.
FileStamp = tuple[int, int, int]


class UnknownModel(LookupError):
    """No served model has that name (or it is of the other kind); the message lists the known ones."""


class ReloadFailed(RuntimeError):
    """The new file could not be loaded or warmed up; the old version still serves."""


# The stamp of a path that cannot be looked at (a symlink loop, a folder on the way not searchable).
UNREADABLE: FileStamp = (-1, -1, -1)


def file_stamp(path: Path) -> FileStamp | None:
    """What a cheap poll compares; None when the file is absent, UNREADABLE when stat itself fails."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return UNREADABLE
    return (status.st_ino, status.st_size, status.st_mtime_ns)


@dataclass
class ModelSlot:
    """One name and the version it serves now; a reload replaces `served` in one assignment."""

    source: ModelSource
    served: ServedModel
    stamp: FileStamp | None  # of the file last loaded or tried, so a broken file is tried once, not every poll
    default: bool = False
    last_reload_error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload of a name at a time


@dataclass(frozen=True)
class ReloadOutcome:
    name: str
    version: str
    previous_version: str


class ModelRegistry:
    """Every served model by name, each with its own batching engine; each kind's default is the one its
    single-model setting names (DETECTOR_CHECKPOINT, CLASSIFIER_CHECKPOINT), else its first by name."""

    def __init__(
        self, *, settings: Settings, device: torch.device, metrics: ServiceMetrics, memory: MemoryBudget | None = None
    ) -> None:
        self.settings = settings
        self.device = device
        self.metrics = metrics
        self.memory = memory  # the app's one budget: every engine's queued images are charged to it
        self.slots: dict[str, ModelSlot] = {}
        self._retiring: set[asyncio.Task] = set()

    # ----------------------------------------------------------------------------- start and stop

    async def start(self) -> None:
        """Load every configured model (all or nothing: ModelLoadError) and start their engines."""
        sources = configured_sources(self.settings)
        stamps = [file_stamp(source.path) for source in sources]  # before reading: a later change is seen
        loaded = await asyncio.to_thread(self._load_all, sources)
        usable = [(source, stamp, served) for source, stamp, served in zip(sources, stamps, loaded) if served]
        if not usable:
            raise ModelLoadError(
                f"no usable model: each of the {len(sources)} checkpoint files of MODELS_DIR was skipped (logged above)"
            )
        slots: dict[str, ModelSlot] = {}
        for source, stamp, served in usable:
            if served.name in slots:
                raise ModelLoadError(
                    f"{source.setting}: {source.path} and {slots[served.name].source.path} are both named "
                    f"{served.name!r}; rename a file or set a different 'name' in its manifest"
                )
            slots[served.name] = ModelSlot(source=source, served=served, stamp=stamp)
        detectors = sorted(name for name, slot in slots.items() if slot.served.role == "detector")
        unknown = [name for name in self.settings.detector_test_time if name not in detectors]
        if unknown:
            raise ModelLoadError(
                f"DETECTOR_TEST_TIME names {', '.join(map(repr, unknown))}, which is no served detector; detectors "
                f"served: {', '.join(detectors) or 'none'}"
            )
        for role in ("detector", "classifier"):
            of_role = sorted((slot for slot in slots.values() if slot.served.role == role),
                             key=lambda slot: (not slot.source.default, slot.served.name))  # fmt: skip
            if of_role:
                of_role[0].default = True
        for slot in slots.values():
            await self._start_engine(slot.served)
        self.slots = slots

    def _load_all(self, sources: list[ModelSource]) -> list[ServedModel | None]:
        """Each source's model; None for a file of MODELS_DIR that cannot be served (skipped, logged, counted):
        a folder is whatever lands in it. A checkpoint a setting names must load, or start-up fails."""
        loaded = []
        for source in sources:
            try:
                loaded.append(load_model(source, settings=self.settings, device=self.device))
            except ModelLoadError as error:
                if source.setting != "MODELS_DIR":
                    raise
                self.skipped(error)
                loaded.append(None)
        return loaded

    def skipped(self, error: ModelLoadError) -> None:
        """One log line and one count for a checkpoint file left unserved."""
        log.error("skipped checkpoint file (%s): %s", self._count_skipped(error), error)

    def _count_skipped(self, error: BaseException) -> str:
        reason = error.reason if isinstance(error, UnusableFile) else "does_not_load"
        self.metrics.model_files_skipped.labels(reason=reason).inc()
        return reason

    async def stop(self) -> None:
        """Stop every engine, the retiring ones included (their requests are over: the server is shutting down)."""
        for task in list(self._retiring):
            task.cancel()
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for slot in self.slots.values():
            await slot.served.engine.stop()

    async def _start_engine(self, served: ServedModel) -> None:
        settings = self.settings
        served.engine = BatchingEngine(
            name=served.name,
            run_batch=served.predictor.run,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_batch_wait_ms / 1e3,
            max_queue=settings.max_queue,
            on_batch=partial(self.metrics.record_batch, served.name),
            on_queue_depth=self.metrics.queue_depth.labels(model=served.name).set,
            on_cancelled=self.metrics.cancelled_work.labels(stage="inference_queued").inc,
            # torch's thread count belongs to the calling thread (OpenMP): set it in the inference thread itself
            worker_init=partial(torch.set_num_threads, settings.torch_threads) if settings.torch_threads else None,
            memory=self.memory,
            item_bytes=lambda request: request.nbytes,
        )
        await served.engine.start()

    async def warm_up(self, served: ServedModel) -> None:
        """The network's export and compile (another runtime than eager PyTorch: whatever WARMUP says, a first
        request must not wait minutes), then one batch through the model's engine, so its first real request
        does not pay for lazy set-up."""
        await asyncio.to_thread(served.build)
        if self.settings.warmup:
            await served.engine.submit(served.predictor.warmup_request())

    # -------------------------------------------------------------------------------------- lookup

    def roles(self) -> list[str]:
        return sorted({slot.served.role for slot in self.slots.values()})

    def default(self, role: str) -> ServedModel | None:
        """The model of `role` that requests without ?model= get; None when none of that kind is served."""
        return next((slot.served for slot in self.slots.values() if slot.default and slot.served.role == role), None)

    def slot(self, name: str) -> ModelSlot:
        if name not in self.slots:
            raise UnknownModel(f"no model named {name!r}; served: {', '.join(sorted(self.slots)) or 'none'}")
        return self.slots[name]

    def select(self, *, role: str, name: str | None) -> ServedModel:
        """The model a request asked for (`name`), or its kind's default; UnknownModel lists the choices."""
        if name is None:
            served = self.default(role)
            if served is None:
                raise UnknownModel(f"no {role} is served here")
            return served
        served = self.slots[name].served if name in self.slots else None
        if served is None or served.role != role:
            known = sorted(slot_name for slot_name, slot in self.slots.items() if slot.served.role == role)
            what = f"{name!r} is a {served.role}, not a {role}" if served else f"no {role} named {name!r}"
            raise UnknownModel(f"{what}; {role}s served: {', '.join(known) or 'none'}")
        return served

    # -------------------------------------------------------------------------------------- reload

    async def reload(self, name: str) -> ReloadOutcome:
        """Load the model's file again beside the serving version, warm it up, swap; ReloadFailed keeps the old."""
        slot = self.slot(name)
        async with slot.lock:
            old = slot.served
            stamp = file_stamp(slot.source.path)  # before reading: a write during the load is seen by the next poll
            try:
                new = await self._load_replacement(slot)
            except Exception as error:  # any failure of the new file must leave the old model serving
                slot.stamp = stamp
                self._count_skipped(error)
                reason = str(error) if isinstance(error, ModelLoadError) else repr(error)
                log.error("reload of %s failed, still serving %s: %s", name, old.version, reason)
                # Clients (the reload answer, the open /models) see the file's name, not where the server keeps it.
                slot.last_reload_error = reason.replace(str(slot.source.path), slot.source.path.name)
                raise ReloadFailed(
                    f"reload of {name!r} failed, still serving {old.version}: {slot.last_reload_error}"
                ) from error
            slot.served, slot.stamp, slot.last_reload_error = new, stamp, None  # the swap: no await in between
        self._retire(old)
        log.info("reloaded %s: %s -> %s", name, old.version, new.version)
        return ReloadOutcome(name=name, version=new.version, previous_version=old.version)

    async def _load_replacement(self, slot: ModelSlot) -> ServedModel:
        old = slot.served
        new = await asyncio.to_thread(load_model, slot.source, settings=self.settings, device=self.device)
        if new.role != old.role or new.name != old.name:
            raise ModelLoadError(
                f"{slot.source.path} now holds {new.role} {new.name!r}; this model is {old.role} {old.name!r} "
                "(serve a different model under its own file instead)"
            )
        await self._start_engine(new)
        try:
            await self.warm_up(new)
        except BaseException:
            await new.engine.stop()
            raise
        return new

    def _retire(self, old: ServedModel) -> None:
        task = asyncio.create_task(self._drain_and_stop(old), name=f"retire-{old.name}-{old.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _drain_and_stop(old: ServedModel) -> None:
        try:
            await old.wait_idle()
        finally:
            await old.engine.stop()
            log.info("retired %s %s", old.name, old.version)

    # ------------------------------------------------------------------------------------ watching

    async def watch(self, interval_s: float) -> None:
        """Every `interval_s`, reload each model whose file was replaced (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_files()
            except Exception:  # the watcher outlives any one surprise; the models keep serving either way
                log.exception("checking the checkpoint files failed; checking again in %s s", interval_s)

    async def check_files(self) -> None:
        """Reload every model whose file changed since it was loaded; a touched but identical file is skipped."""
        for name, slot in list(self.slots.items()):
            stamp = file_stamp(slot.source.path)
            if stamp is None or stamp == slot.stamp:  # a file being replaced may be absent for a moment
                continue
            if stamp == UNREADABLE:  # said once, and again only after the path was readable in between
                slot.stamp = stamp
                try:
                    check_checkpoint_file(slot.source.path, name)
                except ModelLoadError as error:  # says what stat said: a symlink loop, permission denied
                    self.skipped(error)
                continue
            try:
                same = await asyncio.to_thread(file_version, slot.source.path) == slot.served.version
            except FileNotFoundError:  # gone again between stat and read: the next poll looks again
                continue
            except UnusableFile as error:  # a FIFO, a device: said once, not every poll
                slot.stamp = stamp
                self.skipped(error)
                continue
            except OSError as error:  # unreadable
                slot.stamp = stamp
                self.skipped(UnusableFile(f"{name}: cannot read {slot.source.path}: {error}", reason="unreadable"))
                continue
            if same:
                slot.stamp = stamp
                continue
            with contextlib.suppress(ReloadFailed):  # logged and kept on the slot by reload()
                await self.reload(name)
