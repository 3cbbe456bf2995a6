"""Which device the train step trains on; never silently the CPU when GPUs were asked for.

The pipeline compiled with ``--gpus N`` gives the train step N GPUs and sets ``GPUS_ENV`` to
N beside them (``pipelines.definitions.steps``), so the step knows what it was given. The GPUs
it can see are the CUDA driver's answer (``libcuda.so.1``, mounted into the container by the
NVIDIA container toolkit), which honours ``CUDA_VISIBLE_DEVICES``; no framework is needed to
ask.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.estimators import CPU, CUDA, ESTIMATORS, EstimatorSpec

__all__ = ["GPUS_ENV", "VisibleGpus", "requested_gpus", "training_device", "visible_gpus"]

GPUS_ENV = "CONVEYOR_TRAIN_GPUS"
_CUDA_SUCCESS = 0
_CUDA_ERROR_NO_DEVICE = 100


@dataclass(frozen=True)
class VisibleGpus:
    """The GPUs the CUDA driver shows this process.

    Attributes:
        names: Each visible GPU's name (``NVIDIA H200``), in CUDA's order.
        why_none: Why none is visible, when none is.
    """

    names: tuple[str, ...] = ()
    why_none: str = ""


def requested_gpus(environ: Mapping[str, str] = os.environ) -> int:
    """The GPUs the pipeline gave this step (``GPUS_ENV``; absent: none)."""
    text = environ.get(GPUS_ENV, "").strip() or "0"
    if not text.isdigit():
        raise ConveyorError(f"{GPUS_ENV}={text!r}: expected a whole number of GPUs")
    return int(text)


def visible_gpus() -> VisibleGpus:
    """The GPUs the CUDA driver shows, by its own API (``cuInit``, ``cuDeviceGetCount``)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return VisibleGpus(
            why_none="no NVIDIA driver in this container (libcuda.so.1 cannot be loaded; "
            "on Kubernetes the NVIDIA container toolkit mounts it into GPU pods)"
        )
    status = cuda.cuInit(0)
    if status == _CUDA_ERROR_NO_DEVICE:
        return VisibleGpus(why_none="the NVIDIA driver sees no GPU (CUDA_VISIBLE_DEVICES?)")
    count = ctypes.c_int()
    if status == _CUDA_SUCCESS:
        status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != _CUDA_SUCCESS:
        return VisibleGpus(why_none=f"the NVIDIA driver failed: {_error_name(cuda, status)}")
    if count.value == 0:
        return VisibleGpus(why_none="the NVIDIA driver sees no GPU (CUDA_VISIBLE_DEVICES?)")
    return VisibleGpus(tuple(_device_name(cuda, index) for index in range(count.value)))


def _device_name(cuda: ctypes.CDLL, index: int) -> str:
    """The GPU's name, or ``GPU <index>`` when the driver will not say."""
    device, name = ctypes.c_int(), ctypes.create_string_buffer(256)
    if cuda.cuDeviceGet(ctypes.byref(device), index) or cuda.cuDeviceGetName(
        name, len(name), device
    ):
        return f"GPU {index}"
    return name.value.decode(errors="replace") or f"GPU {index}"


def _error_name(cuda: ctypes.CDLL, status: int) -> str:
    """The CUDA error's name (``CUDA_ERROR_...``), else its number."""
    name = ctypes.c_char_p()
    if cuda.cuGetErrorName(status, ctypes.byref(name)) == _CUDA_SUCCESS and name.value:
        return f"{name.value.decode()} ({status})"
    return f"CUDA error {status}"


def training_device(
    spec: EstimatorSpec, gpus: int, visible: Callable[[], VisibleGpus] = visible_gpus
) -> tuple[str, str]:
    """The device ``spec`` trains on with ``gpus`` requested, and the GPU's name (empty on
    the CPU); ConveyorError when GPUs were requested but the estimator, its installed build
    or the container cannot use one."""
    if gpus == 0:
        return CPU, ""
    given = f"the train step was given {gpus} GPU{'s' if gpus > 1 else ''} (--gpus {gpus})"
    if gpus > 1:
        raise ConveyorError(f"{given}, but it trains on one GPU (XGBoost, one process): give it 1")
    if spec.cuda_build is None:
        gpu_ones = [name for name, other in ESTIMATORS.items() if other.trains_on_gpu]
        raise ConveyorError(
            f"{given}, but estimator {spec.name!r} trains on the CPU only: choose "
            f"{' or '.join(gpu_ones)}, or compile without --gpus"
        )
    if not spec.cuda_build():
        raise ConveyorError(
            f"{given}, but this {spec.library} is a CPU-only build: train in the gpu image, "
            f"which has {spec.library}'s CUDA build"
        )
    found = visible()
    if not found.names:
        raise ConveyorError(f"{given}, but none is visible: {found.why_none}")
    problem = spec.gpu_problem()
    if problem:
        raise ConveyorError(f"{given}, but {spec.name} cannot use it: {problem}")
    return CUDA, found.names[0]
