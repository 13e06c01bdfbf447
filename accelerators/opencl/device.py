"""Which OpenCL devices this machine has, what they are, and which one a session runs on."""

from __future__ import annotations

from typing import Any

from mlscore.accelerators.base import DeviceInfo, DeviceUnavailable

INSTALL_HINT = "pip install 'pyopencl[pocl]' gives a CPU device; GPU and FPGA devices come with their vendors' drivers"

_TYPES = (("GPU", 1 << 2), ("ACCELERATOR", 1 << 3), ("CPU", 1 << 1), ("CUSTOM", 1 << 4))  # CL_DEVICE_TYPE_* bits


def all_devices() -> list[Any]:
    """Every device of every platform, in platform order: the order `opencl_device=INDEX` counts in.
    Raises DeviceUnavailable, saying how to get one, when pyopencl is missing or finds nothing."""
    try:
        import pyopencl as cl
    except ImportError:
        raise DeviceUnavailable(f"the opencl device needs pyopencl, which is not installed: {INSTALL_HINT}") from None
    try:
        found = [device for platform in cl.get_platforms() for device in platform.get_devices()]
    except cl.Error as error:  # no ICD loader, or no platform registered with it
        raise DeviceUnavailable(f"no OpenCL platform found ({error}): {INSTALL_HINT}") from None
    if not found:
        raise DeviceUnavailable(f"no OpenCL device found: {INSTALL_HINT}")
    return found


def describe(index: int, device: Any) -> DeviceInfo:
    """What `available_devices()` says about one device: enough to tell several apart and to size models."""
    details = {
        "index": index,
        "platform": device.platform.name.strip(),
        "vendor": device.vendor.strip(),
        "type": device_type(device),
        "compute_units": device.max_compute_units,
        "global_memory_bytes": device.global_mem_size,
        "local_memory_bytes": device.local_mem_size,
        "max_work_group_size": device.max_work_group_size,
        "opencl_version": device.version.strip(),
        "opencl_c_version": device.opencl_c_version.strip(),
        "driver_version": device.driver_version.strip(),
    }
    return DeviceInfo("opencl", device.name.strip(), details)


def device_type(device: Any) -> str:
    return next((name for name, bit in _TYPES if device.type & bit), "OTHER")


def shares_host_memory(device: Any) -> bool:
    """Whether the device is a CPU with fine-grained buffer SVM: memory that the host and the
    kernels both address, with no map or copy command in between (pocl's CPU device has it)."""
    import pyopencl as cl

    try:
        fine_grained = bool(device.svm_capabilities & cl.device_svm_capabilities.FINE_GRAIN_BUFFER)
    except (cl.Error, AttributeError):  # OpenCL 1.x devices, or a pyopencl built without SVM
        return False
    return fine_grained and device_type(device) == "CPU"


def choose_device(wanted: int | str | None) -> Any:
    """The device `opencl_device=` names: an index into all devices, or a case-insensitive substring
    of "platform device"; by default the first GPU or accelerator (an FPGA board), else the first."""
    found = all_devices()
    if wanted is None:
        return next((device for device in found if device_type(device) in ("GPU", "ACCELERATOR")), found[0])
    if isinstance(wanted, int) or str(wanted).strip().isdigit():
        index = int(wanted)
        if 0 <= index < len(found):
            return found[index]
        raise DeviceUnavailable(f"opencl_device={index} is out of range: {_listing(found)}")
    matches = [device for device in found if str(wanted).lower() in _full_name(device).lower()]
    if not matches:
        raise DeviceUnavailable(f"no OpenCL device matches opencl_device={wanted!r}: {_listing(found)}")
    return matches[0]


def _full_name(device: Any) -> str:
    return f"{device.platform.name.strip()} {device.name.strip()}"


def _listing(found: list[Any]) -> str:
    return "the devices are " + "; ".join(f"{index}: {_full_name(device)}" for index, device in enumerate(found))
